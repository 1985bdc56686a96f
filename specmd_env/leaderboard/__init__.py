"""The leaderboard: every policy scored over traces x capacities x hardware x seeds.

``command`` (``specmd leaderboard``: arguments, the sweep, the report), ``sweep`` (the grid of runs, one
run, the resumable results file), ``backends`` (local process pool or Ray), ``stats`` (normalised score
and intervals), ``learned`` (committed learned agents in the cells they were trained for), ``plots``.
"""
