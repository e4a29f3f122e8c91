"""From finished runs to the scaling law: collect -> cells -> P*_k -> exponents -> tables, figures
and a report. Each stage is a module with one job:

  collect.py            run directories -> one table, a row per run and evaluation
  collect_wandb.py      the same table from W&B (offline logs read by wandb_log.py, or the API)
  cells.py              which evaluation of each run, and the cells runs group in (config roles)
  crossing.py           where a seed-averaged curve crosses a threshold, bootstrapped over seeds
  sample_complexity.py  P*_k per cell and level
  exponents.py          log P*_k fitted on the regressors (regression.py), beside theory.py
  training_time.py      samples seen until each level is learnt
  coherence.py          coherence length against P, a power law per cell
  options.py, fit.py    the fit's settings, and fit() running the stages into a FitResult
  refinement.py         where P*_k are loose and which runs would narrow them (sweep refine)
  export.py             the tables as Markdown, CSV, LaTeX, JSON
  plots.py              the PNG figures (plot_*.py draw them)
  report.py             one folder with report.md, tables and figures; a W&B summary run

Nothing here imports training, sweeps or the CLI: results work wherever the run folders are.
"""
