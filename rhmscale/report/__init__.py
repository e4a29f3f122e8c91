"""A fit presented: tables, figures, report.md and the W&B summary run. Everything here reads a
FitResult (and the collected table) from results/ and draws or writes it; nothing here fits.
Imports one way: report imports results, never the reverse.

  export.py             the tables as Markdown, CSV, LaTeX, JSON; the robustness table as text
  plots.py              the PNG figures (plot_*.py draw them)
  plot_kit.py           what every figure draws from and with: panels, markers, log axes, words
  plot_sample_complexity.py, plot_coherence.py, plot_training_time.py   the figures themselves
  report.py             one folder with report.md, tables and figures; a W&B summary run
"""
