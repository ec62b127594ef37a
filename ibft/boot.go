package ibft

import (
	"errors"
	"fmt"
)

// Choice is the NIC and target to boot from, with notes on any fallback taken.
type Choice struct {
	NIC    NIC
	Target Target
	Notes  []string // why a fallback was used; empty when the flags said it all
}

// Boot picks the boot NIC and target; see BootChoice.
func (t *Table) Boot() (NIC, Target, error) {
	c, err := t.BootChoice()
	return c.NIC, c.Target, err
}

// BootChoice picks the target marked valid and boot-selected, else the first valid
// one; then the NIC that target names (nic association = NIC index), else the first
// valid boot-selected NIC, else the first valid NIC. Each fallback adds a note.
func (t *Table) BootChoice() (Choice, error) {
	var c Choice
	ti := pick(len(t.Targets), func(i int) uint8 { return t.Targets[i].Flags })
	if ti < 0 {
		return c, errors.New("ibft: no valid target structure")
	}
	c.Target = t.Targets[ti]
	if c.Target.Flags&FlagBootSelected == 0 {
		c.Notes = append(c.Notes, fmt.Sprintf("no target is boot-selected; using target%d, the first valid one", c.Target.Index))
	}
	for _, n := range t.NICs {
		if n.Index == c.Target.NIC && n.Flags&FlagValid != 0 {
			c.NIC = n
			return c, nil
		}
	}
	ni := pick(len(t.NICs), func(i int) uint8 { return t.NICs[i].Flags })
	if ni < 0 {
		return c, fmt.Errorf("ibft: target%d: no valid NIC structure", c.Target.Index)
	}
	c.NIC = t.NICs[ni]
	c.Notes = append(c.Notes, fmt.Sprintf("target%d names nic%d, which is absent or not valid; using nic%d", c.Target.Index, c.Target.NIC, c.NIC.Index))
	return c, nil
}

// pick returns the first valid, boot-selected entry, else the first valid one, else -1.
func pick(n int, flags func(int) uint8) int {
	first := -1
	for i := 0; i < n; i++ {
		f := flags(i)
		if f&FlagValid == 0 {
			continue
		}
		if f&FlagBootSelected != 0 {
			return i
		}
		if first < 0 {
			first = i
		}
	}
	return first
}
