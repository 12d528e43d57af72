"""Label-efficiency experiments: simulation, query strategies, phantoms, the demo and plots."""
