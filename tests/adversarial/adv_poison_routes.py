"""Poison cases for the routes beyond the OpenAI protocol: datanets, records and bulk upload,
curation, snapshots, adapters and training, attributions, metering and admin, the dashboard
login. The contract of each case (REJECT, SAFE, HTML, CONTROL) is in adv_poison_cases."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from adv_poison_cases import (
    BIG_INT,
    CONTROL,
    HTML,
    LONG,
    NUL,
    PATH_POISON,
    RAW,
    REJECT,
    SAFE,
    Case,
    chat_cases,
    completion_cases,
    deep,
    dump,
    get_paths,
    junk_bodies,
    models_cases,
    string_variants,
)


# --- datanets, records, snapshots -------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """Ids the poison cases aim at, made by the suite before it starts."""

    open_datanet: int
    curated_datanet: int
    pending_record: int
    snapshot: str


def _uniq(prefix: str) -> str:
    return f"{prefix}-{random.getrandbits(48):012x}"


def datanet_cases(w: World) -> list[Case]:
    out: list[Case] = []
    u = "/v1/datanets"

    def base() -> dict[str, Any]:
        return {"name": _uniq("adv-dn"), "licence": "CC0-1.0", "acceptance": "open",
                "description": "poison target"}  # fmt: skip

    out.append(Case("create datanet control", "POST", u, dump(base()), "curator", CONTROL))
    out += string_variants("create datanet", "POST", u, base(), ["name"], who="curator",
                            nul=REJECT, long=SAFE, inference=False)  # fmt: skip
    out += string_variants("create datanet", "POST", u, base(), ["licence"], who="curator",
                            nul=REJECT, long=SAFE, inference=False)  # fmt: skip
    out += string_variants("create datanet", "POST", u, base(), ["description"],
                            who="curator", nul=SAFE, long=SAFE, inference=False)  # fmt: skip
    for name, patch in {
        "acceptance=NUL": {"acceptance": NUL},
        "curators of 100,000": {"curators": list(range(1, 100_001))},
        "curators=[string]": {"curators": ["x"]},
        "curators=[bigint overflow]": {"curators": [10**19]},
        "policy wrong type": {"policy": {"min_chars": "x"}},
        "policy unknown field": {"policy": {"nope": 1}},
    }.items():
        out.append(Case(f"create datanet {name}", "POST", u, dump(base() | patch), "curator"))
    out.append(Case("create datanet policy nested 10,000 deep", "POST", u,
                    dump(base() | {"policy": RAW}, deep(10_000)), "curator"))  # fmt: skip
    out += junk_bodies("create datanet", "POST", u, "curator", False)
    out += get_paths("GET /v1/datanets/{id}", "inference", "/v1/datanets/{}", PATH_POISON)
    out += get_paths("GET snapshots of datanet", "inference", "/v1/datanets/{}/snapshots",
                      PATH_POISON)  # fmt: skip
    out += get_paths("GET pending of datanet", "curator", "/v1/datanets/{}/records/pending",
                      PATH_POISON)  # fmt: skip
    out += get_paths("GET record", "contributor",
                      f"/v1/datanets/{w.open_datanet}/records/{{}}", PATH_POISON)  # fmt: skip
    out += get_paths("GET proof (snapshot id)", "contributor", "/v1/snapshots/{}/proof/1",
                      PATH_POISON)  # fmt: skip
    out += get_paths("GET proof (record id)", "contributor",
                      f"/v1/snapshots/{w.snapshot}/proof/{{}}", PATH_POISON)  # fmt: skip
    out += get_paths("GET /v1/me/records?datanet=", "contributor", "/v1/me/records?datanet={}",
                      PATH_POISON)  # fmt: skip
    out.append(Case("POST snapshots of datanet NUL", "POST", "/v1/datanets/x%00y/snapshots",
                    b"", "curator"))  # fmt: skip
    out.append(Case("POST snapshots of datanet bigint overflow", "POST",
                    f"/v1/datanets/{BIG_INT}/snapshots", b"", "curator"))  # fmt: skip
    return out


def record_text() -> str:
    words = random.Random().sample(
        "apple basil carrot dill endive fennel garlic honey iris juniper kale leek mint "
        "nutmeg olive parsley quince rosemary sage thyme".split(), 12)  # fmt: skip
    return "Poison-suite record: " + " ".join(words) + "."


def record_cases(w: World) -> list[Case]:
    out: list[Case] = []
    u = f"/v1/datanets/{w.open_datanet}/records"

    def base() -> dict[str, Any]:
        return {"text": record_text(), "metadata": {"source": "adversarial"}}

    out.append(Case("submit record control", "POST", u, dump(base()), "contributor", CONTROL))
    out += string_variants("submit record", "POST", u, base(), ["text"], who="contributor",
                            nul=SAFE, long=SAFE, inference=False)  # fmt: skip
    pc = {"prompt": "What is leek soup?", "completion": record_text()}
    for f in ("prompt", "completion"):
        out += string_variants("submit record", "POST", u, pc, [f], who="contributor",
                                nul=SAFE, long=SAFE, inference=False, huge=False)  # fmt: skip
    out += string_variants("submit record", "POST", u, base(), ["metadata", "source"],
                            who="contributor", nul=SAFE, long=SAFE, inference=False,
                            huge=False)  # fmt: skip
    for name, doc, raw in [
        ("metadata key NUL", base() | {"metadata": {NUL: "v"}}, None),
        ("metadata nested 10,000 deep", base() | {"metadata": {"x": RAW}}, deep(10_000)),
        ("metadata nested 900 deep", base() | {"metadata": {"x": RAW}}, deep(900)),
        ("metadata array of 100,000", base() | {"metadata": {"x": [0] * 100_000}}, None),
        ("text=5", {"text": 5}, None),
        ("text=null", {"text": None}, None),
        ("no text", {"metadata": {}}, None),
    ]:
        expect = SAFE if "900" in name or "key NUL" in name else REJECT
        out.append(Case(f"submit record {name}", "POST", u, dump(doc, raw), "contributor",
                        expect))  # fmt: skip
    out += junk_bodies("submit record", "POST", u, "contributor", False)
    out.append(Case("submit record to datanet NUL", "POST", "/v1/datanets/x%00y/records",
                    dump(base()), "contributor"))  # fmt: skip
    out.append(Case("submit record to datanet bigint overflow", "POST",
                    f"/v1/datanets/{BIG_INT}/records", dump(base()), "contributor"))  # fmt: skip
    # Bulk upload: one poisoned line must not abort the other (non-atomic); atomic refuses.
    bulk = f"/v1/datanets/{w.open_datanet}/records/bulk"
    nul_line = dump({"text": record_text() + " \u0000"})
    good_line = dump({"text": record_text()})
    out.append(Case("bulk JSONL [good, NUL]", "POST", bulk, good_line + b"\n" + nul_line,
                    "contributor", SAFE, "application/x-ndjson"))  # fmt: skip
    out.append(Case("bulk JSONL [good, invalid UTF-8]", "POST", bulk,
                    dump({"text": record_text()}) + b"\n" + b'{"text": "\xff\xfe"}',
                    "contributor", SAFE, "application/x-ndjson"))  # fmt: skip
    out.append(Case("bulk JSONL [good, 10,000 deep]", "POST", bulk,
                    dump({"text": record_text()}) + b"\n" + dump({"text": RAW}, deep(10_000)),
                    "contributor", SAFE, "application/x-ndjson"))  # fmt: skip
    out.append(Case("bulk atomic with a NUL line", "POST", bulk + "?atomic=true",
                    dump({"text": record_text()}) + b"\n" + nul_line, "contributor", REJECT,
                    "application/x-ndjson"))  # fmt: skip
    out.append(Case("bulk JSON array nested 10,000 deep", "POST", bulk,
                    b"[" + deep(10_000) + b"]", "contributor"))  # fmt: skip
    out.append(Case("bulk JSON array of 100,000 numbers", "POST", bulk,
                    dump([1] * 100_000), "contributor", SAFE))  # fmt: skip
    out.append(Case("bulk atomic=NUL", "POST", bulk + "?atomic=%00", good_line, "contributor",
                    REJECT, "application/x-ndjson"))  # fmt: skip
    out.append(Case("bulk empty body", "POST", bulk, b"", "contributor"))
    out.append(Case("bulk invalid UTF-8 array", "POST", bulk, b"[\xff]", "contributor"))
    # Curation decisions.
    d = f"/v1/datanets/{w.curated_datanet}/records/{w.pending_record}/decision"
    out += string_variants("decision", "POST", d, {"approve": False, "reason": "x"},
                            ["reason"], who="curator", nul=SAFE, long=SAFE,
                            inference=False)  # fmt: skip
    out.append(Case("decision approve=string", "POST", d, dump({"approve": "yes", "reason": "x"}),
                    "curator"))  # fmt: skip
    out += junk_bodies("decision", "POST", d, "curator", False)
    for name, v in PATH_POISON.items():
        out.append(Case(f"decision on record {name}", "POST",
                        f"/v1/datanets/{w.curated_datanet}/records/{v}/decision",
                        dump({"approve": False, "reason": "x"}), "curator"))  # fmt: skip
    return out


# --- adapters, attributions, metering, admin ---------------------------------------------------
def adapter_cases() -> list[Case]:
    out: list[Case] = []
    for tmpl in ("/v1/adapters/{}", "/v1/adapters/{}/lineage", "/v1/adapters/{}/records"):
        out += get_paths(f"GET {tmpl}", "inference", tmpl, PATH_POISON)
    for q in ("after", "limit"):
        out += get_paths(f"GET adapter records ?{q}=", "inference",
                          f"/v1/adapters/recipes/records?{q}={{}}", PATH_POISON)  # fmt: skip
    out += get_paths("GET training job", "admin", "/v1/adapters/jobs/{}", PATH_POISON)
    # Training requests always name a datanet that does not exist: one that got through
    # must fail at once, not train on the shared CPUs.
    base = {"datanet": "adv-no-such-datanet", "name": "adv-poison", "owner": "adv-owner",
            "steps": 1}  # fmt: skip
    for f in ("datanet", "name", "owner"):
        out += string_variants("train adapter", "POST", "/v1/adapters", base, [f], who="admin",
                                nul=REJECT, long=REJECT, inference=False)  # fmt: skip
    for name, patch in {"steps=string": {"steps": "x"}, "steps=10**30": {"steps": 10**30},
                        "snapshot=NUL": {"snapshot": NUL}}.items():  # fmt: skip
        out.append(Case(f"train adapter {name}", "POST", "/v1/adapters", dump(base | patch),
                        "admin"))  # fmt: skip
    out += junk_bodies("train adapter", "POST", "/v1/adapters", "admin", False)
    return out


def attribution_cases() -> list[Case]:
    out = get_paths("GET /v1/attributions/{id}", "inference", "/v1/attributions/{}",
                     PATH_POISON)  # fmt: skip
    out += get_paths("GET /v1/me/attributions?limit=", "contributor",
                      "/v1/me/attributions?limit={}", PATH_POISON)  # fmt: skip
    return out


def metering_cases() -> list[Case]:
    out = get_paths("GET /v1/me/statements/{month}", "inference", "/v1/me/statements/{}",
                     PATH_POISON | {"year 99999": "99999-01", "month 13": "2026-13"})  # fmt: skip
    out.append(Case("GET /v1/me/earnings with a 9000-char key", "GET", "/v1/me/earnings",
                    who="long-key"))  # fmt: skip
    out.append(Case("GET /v1/me/holds without a key", "GET", "/v1/me/holds", who="none"))
    return out


def admin_cases() -> list[Case]:
    out: list[Case] = []
    c = "/v1/admin/credits"
    base = {"account": "adv-poison-sink", "amount": "0.000001"}
    out += string_variants("admin credits", "POST", c, base, ["account"], who="admin",
                            nul=REJECT, long=REJECT, inference=False)  # fmt: skip
    out += string_variants("admin credits", "POST", c, base, ["amount"], who="admin",
                            nul=REJECT, long=REJECT, inference=False)  # fmt: skip
    for name, patch in {"amount=number": {"amount": 5}, "amount=1e309": {"amount": "1e309"},
                        "amount=9000 digits": {"amount": "9" * 9000},
                        "amount=-1": {"amount": "-1"}}.items():  # fmt: skip
        out.append(Case(f"admin credits {name}", "POST", c, dump(base | patch), "admin"))
    out += junk_bodies("admin credits", "POST", c, "admin", False)
    p = "/v1/admin/prices"
    pbase = {"base_model": "adv-no-such-base", "adapter": "adv-no-such-adapter",
             "input": "0", "output": "0"}  # fmt: skip
    out.append(Case("admin prices control", "POST", p, dump(pbase), "admin", CONTROL))
    for f in ("base_model", "adapter"):
        out += string_variants("admin prices", "POST", p, pbase, [f], who="admin", nul=REJECT,
                                long=SAFE, inference=False)  # fmt: skip
    for f in ("input", "output", "effective_from"):
        out += string_variants("admin prices", "POST", p, pbase, [f], who="admin", nul=REJECT,
                                long=REJECT, inference=False, huge=False)  # fmt: skip
    out += junk_bodies("admin prices", "POST", p, "admin", False)
    # The dashboard's login form (HTML, not the API's error shape).
    out.append(Case("dashboard login key=NUL", "POST", "/dashboard/login", b"key=x%00y", "none",
                    HTML, "application/x-www-form-urlencoded"))  # fmt: skip
    out.append(Case("dashboard login invalid UTF-8", "POST", "/dashboard/login",
                    b"key=\xff\xfe", "none", HTML,
                    "application/x-www-form-urlencoded"))  # fmt: skip
    out.append(Case("dashboard login 9000-char key", "POST", "/dashboard/login",
                    f"key={LONG}".encode(), "none", HTML,
                    "application/x-www-form-urlencoded"))  # fmt: skip
    return out


def all_cases(w: World) -> list[Case]:
    return [
        *chat_cases(),
        *completion_cases(),
        *models_cases(),
        *datanet_cases(w),
        *record_cases(w),
        *adapter_cases(),
        *attribution_cases(),
        *metering_cases(),
        *admin_cases(),
    ]
