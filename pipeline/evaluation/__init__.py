"""Evaluation suites against the paper's figures, their summaries and the HTML report."""
