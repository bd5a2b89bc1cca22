"""Each experiment's config class, in a module named as the experiment, importing no torch,
pandas, SciPy or Prefect: the command line builds, shows and refuses configs with these
alone and imports the experiment (:mod:`collide.experiments`) only to run it."""
