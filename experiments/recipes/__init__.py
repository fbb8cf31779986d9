"""Full-scale recipes (configs, launcher, job scripts) for the paper's ExoRL AT runs and the DT
paper's D4RL runs; see ``experiments/recipes/configs.py`` and docs/reproductions.md."""
