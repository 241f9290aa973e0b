"""The double-entry ledger: the book (accounts, transactions, entries), the posting worker and
its batch split, adjustments, attribution sources, and the audit of every invariant."""
