"""The high-level API: the InstantID object, an analysed Identity, the settings schemas, results and regions."""
