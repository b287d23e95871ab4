"""fedsql's Flower baseline app (see bench/flower_sites.sh)."""
