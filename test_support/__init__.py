"""What the tests and the benches share: servers for the length of a block (servers),
stopping `mlflow run` with a signal and watching it end (stopping), and reading the team
stack's bucket and records (stack). Imported by tests and benches, never the other way."""
