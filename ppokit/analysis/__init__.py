"""Looking at runs together: ``ppokit plot`` (:mod:`~ppokit.analysis.plots`) and the aggregates across
tasks it draws (:mod:`~ppokit.analysis.aggregate`: rliable's IQM, median, mean, optimality gap, bootstrap intervals)."""
