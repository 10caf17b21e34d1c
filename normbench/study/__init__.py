"""Everything above one run: the grid of a sweep, running it (here or through Hydra launchers), and
the tables and figures made from run records."""
