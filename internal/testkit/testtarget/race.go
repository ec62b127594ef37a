//go:build race

package testtarget

// raceEnabled: gotgt v0.2.2 has data races of its own, which fail any test the
// race detector watches, so it is not started under -race.
const raceEnabled = true
