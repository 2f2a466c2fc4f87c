"""The lab: studies (compare, tune, the membership audit) and the benchmarks behind
BENCHMARKS.md, beside the product and never imported by it (nor installed with its
wheel). Run from a source checkout as ``python -m lab COMMAND``."""
