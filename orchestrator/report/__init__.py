"""The report: everything `vpgrid report` makes from a store, and the demo's numbers in the docs. One pipeline:
the store's rows and the grid's runs become the run table (`runs`, spelled by `names`: the one place a variant, a
budget or a setting is named), which `aggregate` and `cost` turn into means, intervals and paired costs; `summary`
is `vpgrid report`'s Markdown/JSON table, and `--out DIR` (`deliver`) plans its entries (`plan`, `paper_figures`,
`paper_tables`, sharing `entry`), draws them (`plots`, `plots_paper` on `draw`) and writes the index (`index`).
`demo` checks the demo's findings and writes its golden values and README tables. No torch: matplotlib only in the
drawing modules, pandas only in the functions that run.
"""
