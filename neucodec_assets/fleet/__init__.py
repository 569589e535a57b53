"""The rented GPU fleet: its SkyPilot task (skypilot.py, the only module that imports `sky`), what it is doing
(view.py, from the workers' heartbeats), how big it should be (scaling.py, pure) and the sensor that sizes it
(sensor.py)."""
