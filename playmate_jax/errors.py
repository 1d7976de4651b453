"""The one exception type for user mistakes.

A `UserError` carries one plain sentence that names the file or setting at fault and the fix. Entry points
(launch.py, pipelines/*) catch it, print the sentence and exit with status 2, so a user never sees a stack
trace for a missing file, a bad config value, an unreadable audio file and the like.
"""


class UserError(Exception):
  """A mistake the user can fix; str(error) is the whole message."""
