"""KPI data: CSV sessions read into arrays and split by session, and the KPI simulator."""
