"""Online serving: the model server, its arms, and the exposure log an experiment is read from."""
