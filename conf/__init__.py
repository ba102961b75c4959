"""qconf's conf tree as a package, so that Hydra can use it as `pkg://qconf.conf`."""
