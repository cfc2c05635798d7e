"""Files in and out: model references and loading, the demo (tiny) weights, writing outputs."""
