"""Training: the task (data, model, loss), the custom loop, losses, the optimizer."""
