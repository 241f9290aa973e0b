"""Monthly reports: the data behind them, and their HTML/CSV and PDF renderings."""
