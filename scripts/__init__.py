"""Tools around the model: archive, serve, predict, demo. They talk to servers over the wire."""
