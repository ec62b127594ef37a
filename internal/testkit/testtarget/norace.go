//go:build !race

package testtarget

const raceEnabled = false
