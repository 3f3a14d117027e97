"""The recipes, one file per kind of task: what a reader calls to fine-tune their own model on their own data."""
