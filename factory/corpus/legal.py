"""Legal: clauses of leases and other agreements. Each clause family has an opening sentence
and follow-ups that belong with it."""

from __future__ import annotations

import random

from factory.corpus.grammar import expand, subset, tidy

__all__ = ["legal_pretraining_record", "legal_record"]

_LEGAL_RULES: dict[str, tuple[str, ...]] = {
    "rent": ("850", "950", "1,100", "1,200", "1,450", "1,600", "2,000"),
    "currency": ("dollars", "euros", "pounds"),
    "ordinal": ("first", "fifth", "tenth", "fifteenth"),
    "days": ("seven", "fourteen", "twenty one", "thirty", "sixty"),
    "post_days": ("two", "three", "five"),
    "amount": ("10,000", "50,000", "100,000", "250,000", "one million"),
    "hours": ("twenty four", "forty eight", "seventy two"),
    "months": ("one", "two", "three", "six"),
    "term": ("twelve months", "six months", "two years", "one year"),
    "party": ("supplier", "contractor", "licensee", "employee", "consultant"),
    "payer": ("customer", "client", "buyer", "licensee"),
    "premises": ("premises", "property", "flat", "house", "apartment"),
    "space": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    "collection": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "utility": (
        "electricity, gas and water",
        "water and heating",
        "internet and telephone",
        "council tax and water",
    ),
}

# (opening sentence, follow-up sentences)
_TENANT_CLAUSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "The tenant shall pay the rent of {rent} {currency} per month in advance on the {ordinal} "
        "day of each month.",
        (
            "Rent shall be paid by bank transfer to the account named by the landlord.",
            "If the rent is more than {days} days late, the landlord may charge interest on the "
            "amount owed.",
            "The first payment is due on the date this lease is signed.",
        ),
    ),
    (
        "The tenant shall keep the {premises} clean and in good repair throughout the term.",
        (
            "The tenant is not responsible for fair wear and tear.",
            "The landlord shall remain responsible for the structure and the exterior of the "
            "building.",
            "Any damage caused by the tenant or their guests shall be repaired at the tenant's "
            "cost.",
        ),
    ),
    (
        "The tenant shall not sublet or assign the {premises} without the prior written consent "
        "of the landlord.",
        (
            "Such consent shall not be unreasonably withheld.",
            "Any attempt to sublet without consent shall be a breach of this lease.",
            "The landlord shall reply to a written request within {days} days.",
        ),
    ),
    (
        "The tenant shall notify the landlord in writing of any damage or defect within {days} "
        "days of discovering it.",
        (
            "The landlord shall arrange repairs within a reasonable time.",
            "In an emergency, the tenant may call a qualified repairer and recover the reasonable "
            "cost.",
            "Notice may be given by letter or by email.",
        ),
    ),
    (
        "The tenant shall permit the landlord to enter the {premises} at reasonable times, upon "
        "{hours} hours' notice, to inspect or carry out repairs.",
        (
            "No notice is required in an emergency.",
            "The landlord shall not enter more than once a month except for urgent repairs.",
            "The tenant may ask to be present during any inspection.",
        ),
    ),
    (
        "The tenant shall not keep any pets at the {premises} without the written permission of "
        "the landlord.",
        (
            "Permission for one cat or small dog shall not be unreasonably refused.",
            "The tenant shall pay for any cleaning needed because of a pet.",
        ),
    ),
    (
        "The tenant shall pay all charges for {utility} used at the {premises} during the term.",
        (
            "The accounts shall be transferred into the tenant's name on the start date.",
            "Any unpaid charges at the end of the term may be taken from the deposit.",
        ),
    ),
    (
        "The tenant shall pay a security deposit of {rent} {currency} before moving in.",
        (
            "The deposit shall be held in a protected account for the whole term.",
            "The deposit shall be returned within {days} days after the end of the tenancy, less "
            "any reasonable deductions.",
            "The landlord shall give the tenant a written list of any deductions.",
        ),
    ),
    (
        "The tenant shall not make any alterations or additions to the {premises} without the "
        "landlord's written consent.",
        (
            "At the end of the term, the tenant shall remove any approved additions and make good "
            "any damage.",
            "Hanging pictures with small nails shall not count as an alteration.",
        ),
    ),
    (
        "The tenant shall return all keys and leave the {premises} in the same condition as at "
        "the start of the term, fair wear and tear excepted.",
        (
            "An inventory signed by both parties shall be used to check the condition.",
            "Any items left behind may be removed by the landlord after {days} days.",
        ),
    ),
    (
        "The tenant shall use the {premises} only as a private home for the tenant and their "
        "household.",
        (
            "The tenant shall not run a business from the {premises} without consent.",
            "No more than {months} guests may stay overnight for longer than two weeks.",
        ),
    ),
    (
        "The tenant shall give at least {months} months' written notice before leaving at the "
        "end of the term.",
        (
            "The notice shall end on the last day of a rental period.",
            "If the tenant leaves early, rent remains payable until a new tenant is found.",
        ),
    ),
    (
        "The tenant shall not cause a nuisance or disturbance to neighbours or other occupiers.",
        (
            "Loud music shall not be played after eleven at night.",
            "Repeated complaints may give the landlord grounds to end the tenancy.",
        ),
    ),
    (
        "The tenant shall keep the garden tidy and cut the grass regularly during the "
        "growing season.",
        (
            "The landlord shall provide a lawn mower in working order.",
            "Trees and large shrubs remain the responsibility of the landlord.",
            "The tenant shall not remove any plants without the landlord's consent.",
        ),
    ),
    (
        "The tenant shall take reasonable steps to stop the pipes from freezing in cold weather.",
        (
            "If the {premises} are left empty for more than {days} days in winter, the tenant "
            "shall leave the heating on a low setting.",
            "The tenant shall tell the landlord where the main water tap is kept.",
        ),
    ),
    (
        "The tenant shall allow new tenants to view the {premises} during the last {days} days "
        "of the term.",
        (
            "Viewings shall take place at reasonable times and with {hours} hours' notice.",
            "The landlord or the agent shall be present at every viewing.",
        ),
    ),
    (
        "The tenant shall replace light bulbs, fuses and smoke alarm batteries that fail "
        "during the term.",
        (
            "The tenant shall test the smoke alarms at least once a month.",
            "The landlord shall repair any fault in the wiring itself.",
        ),
    ),
    (
        "The tenant shall put all rubbish in the bins provided and leave them out for "
        "collection on the {collection} of each week.",
        (
            "Large items shall be taken to the recycling centre by the tenant.",
            "The tenant shall keep the bin store clean and tidy.",
        ),
    ),
    (
        "The tenant shall not smoke inside the {premises} or allow guests to do so.",
        (
            "Smoking is permitted in the garden only.",
            "The cost of removing smoke damage may be taken from the deposit.",
        ),
    ),
    (
        "The tenant shall air the rooms regularly and use the extractor fans to prevent damp "
        "and mould.",
        (
            "The tenant shall report any sign of damp to the landlord within {days} days.",
            "The landlord shall treat any damp caused by a defect in the building.",
        ),
    ),
    (
        "The tenant shall park only in parking space number {space} and shall keep the shared "
        "driveway clear.",
        (
            "Caravans, boats and trailers shall not be kept at the {premises}.",
            "Visitors shall use the public car park on the street.",
        ),
    ),
)

_OTHER_CLAUSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "The {party} shall perform the services with reasonable skill and care and in line "
        "with good industry practice.",
        (
            "The {party} shall use suitably qualified staff.",
            "Any defect in the services shall be corrected within {days} days of notice.",
            "The {party} shall comply with all applicable laws and regulations.",
        ),
    ),
    (
        "The total liability of either party under this agreement shall not exceed {amount} "
        "{currency}.",
        (
            "Nothing in this agreement limits liability for fraud.",
            "Neither party shall be liable for any indirect or consequential loss.",
        ),
    ),
    (
        "All intellectual property created by the {party} in the course of this agreement "
        "shall belong to the {payer}.",
        (
            "The {party} shall sign any document needed to confirm that ownership.",
            "The {party} may keep a copy of its own working notes.",
        ),
    ),
    (
        "The {party} shall maintain insurance cover of at least {amount} {currency} for the "
        "whole term of this agreement.",
        (
            "A copy of the policy shall be provided on request.",
            "The {party} shall notify the {payer} at once if the cover is cancelled.",
        ),
    ),
    (
        "Any dispute arising under this agreement shall first be referred to mediation.",
        (
            "If the dispute is not settled within {days} days, either party may go to court.",
            "Each party shall pay its own costs of the mediation.",
        ),
    ),
    (
        "Neither party may assign or transfer its rights under this agreement without the "
        "written consent of the other.",
        (
            "Consent shall not be unreasonably withheld or delayed.",
            "This agreement binds the successors of each party.",
        ),
    ),
    (
        "Any notice under this agreement shall be in writing and delivered by hand, by post or "
        "by email.",
        (
            "A notice sent by post is treated as received {post_days} days after posting.",
            "A notice sent by email is treated as received on the next working day.",
        ),
    ),
    (
        "This agreement is the entire agreement between the parties and replaces any earlier "
        "arrangement.",
        (
            "Each party confirms that it has not relied on any statement not set out in this "
            "agreement.",
            "If any term is found to be invalid, the other terms shall remain in force.",
        ),
    ),
    (
        "The {party} shall not, for {months} months after the end of this agreement, approach "
        "any employee of the {payer} with an offer of work.",
        ("This restriction does not apply to general job advertisements.",),
    ),
    (
        "The {payer} shall pay the {party} a fee of {amount} {currency} for each month of "
        "the term.",
        (
            "The fee does not include value added tax.",
            "The fee shall be reviewed once a year.",
            "Expenses shall be paid only if agreed in writing in advance.",
        ),
    ),
    (
        "The landlord shall keep the structure, roof and exterior of the building in good repair.",
        (
            "The landlord shall maintain the heating and hot water systems.",
            "Repairs shall be carried out within a reasonable time after notice.",
        ),
    ),
    (
        "This lease shall begin on the start date and continue for a term of {term}.",
        ("After the term, the tenancy shall continue from month to month until ended by notice.",),
    ),
    (
        "Either party may terminate this agreement by giving {days} days' written notice to "
        "the other.",
        (
            "Termination shall not affect any rights that arose before the date of termination.",
            "Notice shall be sent to the address stated at the top of this agreement.",
        ),
    ),
    (
        "The {seller} shall deliver the goods to the {buyer} within {days} days of each order.",
        (
            "Risk in the goods shall pass to the {buyer} on delivery.",
            "Late delivery shall entitle the {buyer} to a reduction in the price.",
        ),
    ),
    (
        "The {party} shall keep all confidential information secret and shall not disclose it "
        "to any third party.",
        (
            "This obligation shall survive the end of this agreement.",
            "Information that is already public is not confidential information.",
        ),
    ),
    (
        "This agreement shall be governed by the laws of the country where the premises are "
        "located.",
        ("The courts of that country shall have exclusive jurisdiction over any dispute.",),
    ),
    (
        "Neither party shall be liable for any delay caused by events beyond its reasonable "
        "control.",
        (
            "Such events include fire, flood, storm and the failure of public utilities.",
            "The affected party shall notify the other party as soon as possible.",
        ),
    ),
    (
        "The {payer} shall pay each invoice within {days} days of receiving it.",
        (
            "Interest shall accrue on late payments at a reasonable rate.",
            "Any disputed amount shall be raised in writing before the due date.",
        ),
    ),
    (
        "Any change to this agreement shall be made in writing and signed by both parties.",
        ("No oral agreement shall vary these terms.",),
    ),
)


def legal_record(rng: random.Random, tenancy: float = 0.8) -> str:
    """A clause; with probability `tenancy` one of the tenant's obligations."""
    r = _LEGAL_RULES
    tenant = rng.random() < tenancy
    opening, follow = rng.choice(_TENANT_CLAUSES if tenant else _OTHER_CLAUSES)
    seller, buyer = rng.choice((("supplier", "customer"), ("seller", "buyer")))
    ctx = {
        "seller": seller,
        "buyer": buyer,
        "party": rng.choice(r["party"]),
        "payer": rng.choice(r["payer"]),
        "premises": rng.choice(r["premises"]),
    }
    n_follow = rng.randint(0, min(2, len(follow)))
    sentences = [opening, *subset(rng, follow, n_follow, n_follow)]
    if rng.random() < 0.3:  # a second obligation
        second = rng.choice(_TENANT_CLAUSES if tenant else _OTHER_CLAUSES)[0]
        if second != opening:
            sentences.append(second)
    return " ".join(tidy(expand(r, s, rng, ctx)) for s in sentences)


def legal_pretraining_record(rng: random.Random) -> str:
    return legal_record(rng, tenancy=0.5)
