package initproc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/isboot/isboot/internal/netguard"
	"github.com/isboot/isboot/netcfg"
)

// carryNetwork leaves the boot NIC's configuration in runDir (/run, which switch_root
// moves into the real root) where the real root's tools look, since the initramfs's
// /etc/resolv.conf goes with the initramfs:
//   - net-<link>.conf (net6-<link>.conf for IPv6), as initramfs-tools' ipconfig
//     writes it: cloud-init and initramfs-tools-style scripts read it;
//   - isboot/resolv.conf, a complete resolv.conf with the iBFT's DNS servers, for the
//     real root's resolver (/etc/resolv.conf may link to it; docs/boot.md).
//
// It returns the files written.
func carryNetwork(runDir string, p *netcfg.Plan, link string) ([]string, error) {
	name, content := p.NetConf(link)
	files := []string{filepath.Join(runDir, name)}
	if len(p.DNS) > 0 {
		files = append(files, filepath.Join(runDir, "isboot", "resolv.conf"))
	}
	contents := [][]byte{content, netcfg.ResolvConf(nil, p.DNS, fmt.Sprintf("iBFT nic%d", p.NIC))}
	var errs []error
	for i, f := range files {
		err := os.MkdirAll(filepath.Dir(f), 0o755)
		if err == nil {
			err = os.WriteFile(f, contents[i], 0o644)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return files, errors.Join(errs...)
}

// carryGuard writes into runDir what the real root's network managers read to leave
// the boot NIC alone (netguard.Files). It returns the files written.
func carryGuard(runDir string, p *netcfg.Plan, link string) ([]string, error) {
	var files []string
	var errs []error
	for _, f := range netguard.Files(p, link) {
		path := filepath.Join(runDir, f.Path)
		err := os.MkdirAll(filepath.Dir(path), 0o755)
		if err == nil {
			err = os.WriteFile(path, f.Content, 0o644)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		files = append(files, path)
	}
	return files, errors.Join(errs...)
}
