"""The Vagrant lab: settings, Vagrantfile, box builder and the python-vagrant wrapper."""
