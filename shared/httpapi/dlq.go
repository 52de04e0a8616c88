package httpapi

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

func handleRetryMessage(log *slog.Logger, msgs Messages) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := messageID(r)
		if !validUUID(id) {
			writeError(w, r, log, message.ErrNotFound)
			return
		}
		m, err := msgs.Retry(r.Context(), id)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		w.Header().Set("Location", "/messages/"+url.PathEscape(m.ID))
		writeJSON(w, r, log, http.StatusAccepted, m)
	})
}

// replayBody is the optional body of POST /dlq/replay.
type replayBody struct {
	// Since and IDs are read apart: "since":null, "since":"", "ids":null
	// and "ids":[] must not pass for an absent field, which means every
	// failure.
	Since  json.RawMessage `json:"since"`
	IDs    json.RawMessage `json:"ids"`
	DryRun bool            `json:"dryRun"`
}

// replayFields are the JSON names of replayBody's fields, for checkKeys.
var replayFields = jsonFieldNames[replayBody]()

func handleReplay(log *slog.Logger, msgs Messages, maxBody int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q, ok := queryParams(w, r, "dryRun", "since")
		if !ok {
			return
		}
		// The body is optional (every failure is replayed without one),
		// and so is the Content-Type of a request without one.
		if !jsonContentType(w, r, r.ContentLength != 0) {
			return
		}
		var b replayBody
		if err := decodeBody(w, r, maxBody, &b, replayFields, true); err != nil && err != errEmptyBody {
			writeError(w, r, log, err)
			return
		}
		req := message.ReplayRequest{DryRun: b.DryRun}
		if q.Has("dryRun") {
			// ?dryRun= (a script's unset variable) is no answer: it must
			// not read as a real run.
			dry, err := strconv.ParseBool(q.Get("dryRun"))
			if err != nil {
				writeInvalid(w, r, "dryRun", "must be true or false")
				return
			}
			req.DryRun = req.DryRun || dry
		}
		var ids []string
		if b.IDs != nil {
			if err := json.Unmarshal(b.IDs, &ids); err != nil {
				writeInvalid(w, r, "ids", "must be an array of message ids")
				return
			}
			if len(ids) == 0 {
				// Most likely an empty selection, not "everything":
				// replaying every failure takes leaving ids out.
				writeInvalid(w, r, "ids", "must list at least one id; leave it out to replay every failed message")
				return
			}
		}
		// An id listed twice (perhaps once in capitals) is one message.
		// Counted twice, a dry run would promise more than the real run
		// replays, since the real run finds the message no longer FAILED
		// the second time.
		seen := make(map[string]bool, len(ids))
		unique := ids[:0]
		for _, id := range ids {
			if !validUUID(id) {
				writeInvalid(w, r, "ids", "must hold message ids (UUIDs) only")
				return
			}
			id = strings.ToLower(id)
			if !seen[id] {
				seen[id] = true
				unique = append(unique, id)
			}
		}
		req.IDs = unique
		// since given but empty (?since=, "since":"", "since":null) is a
		// mistake, not "every failure", and so is since given twice.
		since, hasSince := q.Get("since"), q.Has("since")
		if b.Since != nil {
			if hasSince {
				writeInvalid(w, r, "since", "is given in both the query and the body: give it once")
				return
			}
			hasSince = true
			// Not a string (null, a number): since stays "", refused below.
			_ = json.Unmarshal(b.Since, &since)
		}
		if hasSince {
			t, err := time.Parse(time.RFC3339, since)
			if err != nil {
				writeInvalid(w, r, "since", "must be an RFC 3339 timestamp, such as 2030-01-02T15:04:05Z; leave it out to replay every failed message")
				return
			}
			req.Since = &t
		}
		res, err := msgs.Replay(r.Context(), req)
		if err != nil {
			writeError(w, r, log, err)
			return
		}
		writeJSON(w, r, log, http.StatusOK, res)
	})
}
