"""`pipeline bench`: the raw client, Faust and pipeline ceilings, codec and query-side rates, on one stack."""
