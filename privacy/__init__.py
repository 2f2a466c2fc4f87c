"""Pseudonymisation (keyed HMAC), DP-SGD wiring (Opacus), the privacy accountant and
per-site budget ledger, and secure-aggregation settings."""
