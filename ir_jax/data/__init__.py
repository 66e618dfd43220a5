"""Tasks as prefix-LM token arrays: G2P on CMUdict, character LMs on text;
vocabularies and grain pipelines (`tasks`, `cmudict`, `vocab`)."""
