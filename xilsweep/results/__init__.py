"""The sweep report (``python -m xilsweep.report DIR [DIR ...]``), one job per module:
``folders`` (the sweep folders a report covers, searched or not, Optuna's results),
``collect`` (job folders into jobs and their table), ``select`` (varied settings,
methods and conditions, summary over seeds, the setting chosen by the jobs' stopping
score), ``stats`` (t-intervals over seeds, paired by seed), ``tables`` (Markdown cells
and tables from the figure specs of ``xilsweep.metrics``), ``shortcut`` (is the
shortcut removed, per method; balanced against imbalanced), ``answers`` (the guide's
other questions), ``pareto`` (the front of a two-objective search), ``plots`` and
``curves`` (the figures) and ``report`` (the files and ``main``)."""
