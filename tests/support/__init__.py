"""Real services and peers for tests: a mosquitto broker, an MQTT subscriber."""
