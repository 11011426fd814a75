"""KVM acceptance lab harness: lab backends, guests, migration driver and probes."""
