"""The experiment driver's library: the stage plan, the stage runner, the report."""
