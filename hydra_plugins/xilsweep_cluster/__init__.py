"""xilsweep's cluster plugins: the SLURM launcher (hydra/launcher=slurm) and the
Optuna sweeper for shared studies (hparams_search=lambda_optuna); see docs/cluster.md."""
