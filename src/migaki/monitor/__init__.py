"""After serving: drift of the traffic against the training data, and feedback turned into
training rows."""
