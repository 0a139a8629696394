"""One reader per CANDLE benchmark: the module named like a `ReaderDataset`'s reader ("p1b3", "uno",
"combo", "attn", "p3b1") reads that benchmark's files into `candle_ray.data.joined.JoinedTables` and
writes its synthetic smoke files (contract: `candle_ray.data.spec.ReaderDataset`; lookup by name:
`candle_ray.data.registry`). `candle_tables` (the Pilot1 drug-response files) and `drug_synthetic`
(their synthetic stand-ins) are shared by Uno and Combo. Generic file formats (CSV, TSV, Parquet
matrices) are `candle_ray.data.formats`.
"""
