"""Pipeline stages: each module is one stage, the library function its CLI command calls."""
