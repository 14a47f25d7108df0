"""The fleet planner: how many servers of which kind a workload mix needs, from measured profiles.

``workload`` reads the mix (studies per day with an hourly profile, ward beds, nightly jobs),
``servers`` the candidate server types and the economics, ``service_curve`` turns profile points (or
spec-sheet figures) into service-time distributions, ``simulation`` is a discrete-event simulation of
one server's batchers and devices, and ``fleet`` sizes each option and prices it.
"""
