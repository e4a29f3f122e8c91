"""From finished runs to the scaling law: collect -> cells -> P*_k -> exponents. The readers and
the analysis: everything a fit needs and nothing that draws or writes a report (report/ does,
above this package). Each stage is a module with one job:

  collect.py            run directories -> one table, a row per run and evaluation
  collect_wandb.py      the same table from W&B (offline logs read by wandb_log.py, or the API)
  wandb_log.py          the reader of W&B's offline run logs (.wandb files)
  cells.py              which evaluation of each run, and the cells runs group in (config roles)
  crossing.py           where a seed-averaged curve crosses a threshold, bootstrapped over seeds
  sample_complexity.py  P*_k per cell and level
  design.py             what the cells can tell apart, checked before every fit
  exponents.py          log P*_k fitted on the regressors (regression.py), beside theory.py
  training_time.py      samples seen until each level is learnt
  coherence.py          coherence length against P, a power law per cell
  options.py, fit.py    the fit's settings, and fit() running the stages into a FitResult
  robustness.py         the exponents refitted with one choice changed at a time
  refinement.py         where P*_k are loose and which runs would narrow them (sweep refine)

Nothing here imports training, sweeps, report or the CLI: results work wherever the run folders
are.
"""
