"""The datastore: SQLite state of cases, labels, scores and model versions, behind the Datastore facade."""
