"""Jobs: the one job system (manager, kinds, references to data and models) and the map over independent pieces (Ray or in-process).

This package imports nothing itself: import the module you need."""
