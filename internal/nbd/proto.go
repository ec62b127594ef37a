// Package nbd serves a blockdev.Device over the Network Block Device protocol (fixed
// newstyle handshake; simple replies, or structured replies and the base:allocation
// metadata context for clients that negotiate them) and attaches it to the Linux
// kernel's nbd driver through the "nbd" generic netlink family.
//
// Wire format: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
package nbd

// Handshake magics.
const (
	magicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	magicIHaveOpt   = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply   = 0x0003e889045565a9
	magicRequest    = 0x25609513
	magicSimpleRepl = 0x67446698
	magicStructRepl = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1
)

// Options.
const (
	optExportName = 1
	optAbort      = 2
	optList       = 3
	optInfo       = 6
	optGo         = 7
	optStructured = 8
	optListMeta   = 9
	optSetMeta    = 10
)

// Option reply types; errors have bit 31 set.
const (
	repAck        = 1
	repServer     = 2
	repInfo       = 3
	repMeta       = 4
	repErrUnsup   = 1<<31 + 1
	repErrPolicy  = 1<<31 + 2
	repErrInvalid = 1<<31 + 3
	repErrUnknown = 1<<31 + 6
	repErrTooBig  = 1<<31 + 9
)

// Info types in NBD_REP_INFO.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Transmission flags, sent in the handshake and to the kernel as NBD_ATTR_SERVER_FLAGS.
const (
	FlagHasFlags        = 1 << 0
	FlagReadOnly        = 1 << 1
	FlagSendFlush       = 1 << 2
	FlagSendFUA         = 1 << 3
	FlagSendTrim        = 1 << 5
	FlagSendWriteZeroes = 1 << 6
	FlagSendDF          = 1 << 7 // only offered once structured replies are negotiated
	FlagCanMultiConn    = 1 << 8
)

// Commands (low 16 bits of the request type field).
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags (high 16 bits of the request type field).
const (
	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1
	cmdFlagDF     = 1 << 2 // READ: one content chunk (we never send more)
	cmdFlagReqOne = 1 << 3 // BLOCK_STATUS: one extent
)

// Structured reply chunk flags and types.
const (
	replyFlagDone = 1 << 0

	replyNone        = 0
	replyOffsetData  = 1
	replyBlockStatus = 5
	replyError       = 1<<15 + 1
	replyErrorOffset = 1<<15 + 2
)

// The base:allocation metadata context: its name, the ID we give it when a client
// selects it, and its extent flags.
const (
	metaBaseAllocation = "base:allocation"
	metaIDAllocation   = 1
	stateHole          = 1 << 0
	stateZero          = 1 << 1
)

// maxString is the protocol's limit for names and query strings.
const maxString = 4096

// Error values in replies (Linux errno numbers, as the protocol defines them).
const (
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

const (
	requestSize = 28 // magic32 flags16 type16 cookie64 offset64 length32
	replySize   = 16 // magic32 error32 cookie64
	chunkSize   = 20 // magic32 flags16 type16 cookie64 length32
)
