"""Running a sweep: the runner, samplers and searcher, Ray set-up, progress, and one trial's wiring."""
