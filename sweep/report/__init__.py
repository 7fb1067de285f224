"""Reading a study: the Pareto front, balanced rules, the report's markdown, HTML and figures, study comparison."""
