package daemon

import (
	"context"
	"fmt"
)

// DialISCSI logs in with the iscsi package. (Wired once the iscsi package lands.)
func DialISCSI(ctx context.Context, cfg *Config, logf func(string, ...any)) (Session, error) {
	return nil, fmt.Errorf("iscsi: initiator not in this build: %w", ErrPermanent)
}
