"""Commands that send nothing: validate, plan, schema, status, show, sheet, init, merge."""
