"""Labels: reads -> masks, nodules, consensus, cohorts, folds."""
