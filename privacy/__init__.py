"""Privacy only: pseudonymisation (keyed HMAC), a site's privacy policy, the accountants
and the per-site privacy ledger, DP-SGD wiring (Opacus) and the site's DP releases."""
