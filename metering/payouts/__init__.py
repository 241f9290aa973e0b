"""The month close: statements and Merkle proofs, anti-gaming holds, per-record penalties."""
